"""Data: dataset discovery, resolution and frame buckets, the latent cache, batch sampling."""
