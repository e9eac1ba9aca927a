"""Offline teacher outputs: run the teacher once (``build_cache``), train many students from the stored signals
(``teacher: {cache: CACHE}`` in a recipe). See ``format`` for the layout on disk."""

from distill.cache.build import CacheWriter, build_cache
from distill.cache.read import TeacherCache

__all__ = ["CacheWriter", "TeacherCache", "build_cache"]
