"""HL7 v2: order messages for radiologist review, MLLP transport, ACK discipline."""
