from . import seg_annotations  # noqa: F401  (registers LoadCheckedSegAnnotations)
