from .class_prompts import ClassPromptDataset
from .text_prompts import PromptFileError, TextPromptDataset, read_prompt_file

__all__ = ['ClassPromptDataset', 'PromptFileError', 'TextPromptDataset', 'read_prompt_file']
