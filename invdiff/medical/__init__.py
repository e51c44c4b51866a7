"""Medical imaging over the core: CT set-ups, HU windows and FBP/TV baselines (:mod:`.ct`),
MRI reading, coil handling and SENSE baselines (:mod:`.mri`), and the MONAI dictionary
transform (:mod:`.monai`).  Uses the core only; import each module from here, e.g.
``from invdiff.medical.ct import ct_operator``."""
