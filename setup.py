"""beamml: Apache Beam pipelines for machine learning on point clouds and prediction logs.

This file is also what Dataflow workers install (``--setup_file ./setup.py``).
"""
import setuptools

setuptools.setup(
    name='beamml',
    version='0.1.0',
    description='Apache Beam pipelines for ML on point clouds and prediction logs',
    long_description=open('README.md', encoding='utf-8').read()
    if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=['pipelines', 'transforms'],
    install_requires=[
        'apache-beam[gcp]>=2.60,<3',
        'numpy>=1.24,<3',
        'pyarrow>=14',
        'PyYAML>=6,<7',
    ],
    extras_require={
        'test': [
            'pytest>=7',
            'scikit-learn>=1.3',
            'gcp-storage-emulator>=2024.0',
        ],
    },
    entry_points={'console_scripts': ['beamml=pipelines.__main__:main']},
)
