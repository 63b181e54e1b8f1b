"""What runs in production (the BentoML service). Built in the serving issue; empty until then."""
