"""mlearn: one Allegro model per element, against GAP and MTP."""
