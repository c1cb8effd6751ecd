"""The Stable Diffusion LoRA trainer (SD 1.x, 2.x, XL): ``trainer.py`` prepares a run and gives
its steps to the shared loop; beside it the images and buckets (``data``), the base pipeline
(``model``), the loss, the latent and caption cache, the memory footprint, the output files
(diffusers and kohya) and the sample grid."""
