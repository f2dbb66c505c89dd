"""Dark Halo Scope: find strong gravitational lenses in DESI Legacy Survey DR10 images.

Units used throughout: angles in arcsec (or deg where named *_deg), fluxes and
pixel values in nanomaggies (AB zero point 22.5), pixel scale 0.262 arcsec.
"""

__version__ = "0.1.0"
