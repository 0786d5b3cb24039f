"""Attack engine: FGSM/PGD, AutoAttack adapter, optional torchattacks adapter."""
