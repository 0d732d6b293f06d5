"""Jobs that wire sources, decisions, mapping and sinks together."""
