"""Deployment artefacts made from a bundle (no torch): the Triton model repository (`triton_repo`)."""
