"""Reading and writing: volumes (NIfTI, NRRD, MHA, DICOM series with their checks), label maps
with their label tables, .seg.nrrd and DICOM SEG. Kept light: importing the package imports nothing."""
