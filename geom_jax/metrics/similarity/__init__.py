"""Similarity of two representations of the same points, for every pair of layers:
mutual k-NN and CKNNA from neighbour lists (``knn_alignment``), linear CKA through
HSIC (``cka_hsic``), and the layer-pair driver with the public functions
(``layer_pairs``)."""
