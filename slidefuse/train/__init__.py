"""Decoder training on a frozen encoder (`slidefuse train`) and the pseudo-labelled data of the demo model.

Modules: `dataset` (tile layout, checks, augmentation), `losses` (cross-entropy + Dice, Dice per class),
`loop` (the training protocol and checkpoints), `pseudolabels` (tissue + colour-deconvolution labels),
`tileset` (a pseudo-labelled tile dataset from real slides). torch is imported only inside the functions
that need it, so importing this package is cheap.
"""
