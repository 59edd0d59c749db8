"""Stage 1: the variational autoencoders of the old-photo (A) and clean-photo (B) domains."""

from stage1_vae.vae import VAE, VAEConfig, VAEDecoder, VAEEncoder

__all__ = ["VAE", "VAEConfig", "VAEDecoder", "VAEEncoder"]
