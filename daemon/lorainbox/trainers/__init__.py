"""Trainers: each turns a recipe and prepared data into a LoRA adapter (and a fused model)."""
