"""SMS transport: GSM-7/UCS-2 encoding and segments, SMPP and HTTP gateways, delivery
receipts and inbound messages returned as values.  Built by the SMS issue; nothing here yet."""
