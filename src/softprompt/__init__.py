"""softprompt: prompt tuning (Lester et al., 2021) of frozen Hugging Face models."""

__version__ = "0.1.0"
