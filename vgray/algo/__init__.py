"""The algorithms, pure numpy/torch without Ray: k-means, co-occurrence, GloVe, embedding."""
