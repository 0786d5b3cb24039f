"""Datasets, transforms, ImageNet-C / CIFAR-C readers, demo data."""
