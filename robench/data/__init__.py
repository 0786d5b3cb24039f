"""Data: the format table (robench.data.formats: every `FORMAT:DIR` spec, its reader and class facts), what a
format produces (robench.data.specs), content fingerprints (fingerprint), image folders and transforms (imagenet),
pre-rendered readers (corrupted), the demo digits (digits)."""
