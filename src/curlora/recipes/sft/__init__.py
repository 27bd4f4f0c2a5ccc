"""`curlora sft`: question answering through TRL's SFTTrainer, with perplexity before and after (see runner.py)."""

from curlora.recipes.sft.config import DEFAULT_LR, SFTRecipeConfig, parse_sft_methods
from curlora.recipes.sft.runner import SFTRun, run_sft
from curlora.recipes.sft.trainer import build_trainer, to_dataset

__all__ = ["DEFAULT_LR", "SFTRecipeConfig", "SFTRun", "build_trainer", "parse_sft_methods", "run_sft", "to_dataset"]
