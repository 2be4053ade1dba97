"""Sessions: one publishing peer (or a local capture) each, their manager (admission, places, the sweeper), their input slots, stream keys."""
