"""Triton Python-backend model.py templates, copied into a model repository by publication.

They run inside Triton (they import ``triton_python_backend_utils``), never in this package.
"""
