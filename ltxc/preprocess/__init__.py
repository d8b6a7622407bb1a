"""`ltxc run preprocess`: media + captions -> a resumable latent cache."""
