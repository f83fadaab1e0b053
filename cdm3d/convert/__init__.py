"""Converters of other projects' released models into cdm3d cascade folders."""
