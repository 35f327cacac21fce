from .class_prompts import ClassPromptDataset
from .shapes import ShapesImageDataset, ShapesPromptDataset
from .text_prompts import (
                           BENCHMARKS,
                           PromptFileError,
                           TextPromptDataset,
                           load_benchmark,
                           ocr_target,
                           read_prompt_file,
)

__all__ = ['BENCHMARKS', 'ClassPromptDataset', 'PromptFileError', 'ShapesImageDataset',
           'ShapesPromptDataset', 'TextPromptDataset',
           'load_benchmark', 'ocr_target', 'read_prompt_file']
