"""Install rtdmd; dependencies come from requirements/ so there is one place that pins them."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    """Read ``requirements/<name>.txt``, following ``-r`` includes and dropping comments."""
    lines: list[str] = []
    for line in (HERE / 'requirements' / f'{name}.txt').read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        if line.startswith('-r '):
            lines += read_requirements(Path(line[3:].strip()).stem)
        else:
            lines.append(line)
    return lines


def read_version() -> str:
    namespace: dict = {}
    exec((HERE / 'rtdmd' / 'version.py').read_text(), namespace)
    return namespace['__version__']


setup(
    name='rtdmd',
    version=read_version(),
    description='Reward-tilted distribution matching: few-step, reward-aligned flow generators',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['rtdmd', 'rtdmd.*']),
    # Prompt sets, the shapes world's shipped weights, and the real models' configs (no weights)
    # that the memory planner builds from.
    package_data={'rtdmd': ['datasets/prompts/*', 'assets/shapes/*/*', 'assets/shapes/*/*/*',
                            'models/backbones/architectures/*/*.json',
                            'models/backbones/architectures/*/*/*.json',
                            'models/backbones/architectures/README.md',
                            'rewards/architectures/*/*.json', 'rewards/architectures/README.md']},
    install_requires=read_requirements('runtime'),
    extras_require={'tests': read_requirements('tests')},
    license='Apache-2.0',
)
