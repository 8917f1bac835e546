"""Stage I: VAE-GAN on LR slices, HR synthesis by latent interpolation."""
