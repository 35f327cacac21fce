from .class_prompts import ClassPromptDataset

__all__ = ['ClassPromptDataset']
