"""Denoiser networks (they follow the denoiser contract of cdm3d.core.stage.DiffusionStage)."""
