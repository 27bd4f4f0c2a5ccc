"""Recipes: end-to-end jobs built from the library (bench, sft); they write results, the CLI shows them."""
