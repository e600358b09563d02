"""The hospital's books, read from the gateway store: stock, settlement, reconciliation, reports, trace."""
