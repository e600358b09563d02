"""HIS adapters: HL7 v2 over MLLP and HTTP JSON, behind one interface."""
