"""CURLoRA for causal language models, as a PEFT method.

`import curlora` registers the method with PEFT, so `peft.get_peft_model(model, curlora.CURLoRAConfig(...))`
works like any built-in tuner.
"""

__version__ = "0.1.0"
