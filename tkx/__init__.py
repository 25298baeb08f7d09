"""tkx: Tk-Instruct on JAX/Flax with t5x conventions."""

__version__ = "0.1.0"
