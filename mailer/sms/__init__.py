"""SMS transport: GSM-7/UCS-2 encoding and segments, SMPP and HTTP gateways, delivery
receipts and inbound messages returned as values.

- ``encoding``: what a text costs (``analyse``), its parts (``split``), accent
  normalisation (``to_gsm``, ``saving``);
- ``types``: the values (``SmsOutbound``, ``SubmitResult``, ``Receipt``, ``Inbound``) and
  the ``SmsGateway`` port; ``normalise_provider_id``;
- ``smpp``: ``SmppGateway`` (aiosmpplib for the session); ``deliver``: reading
  ``deliver_sm`` (receipts, inbound, reassembly);
- ``http``: ``HttpGateway``, a configurable REST provider and its status webhooks;
- ``runner``: ``GatewayLoop``, the event loop thread that worker threads submit through,
  and ``gateways_from_settings``.

Not here: ledger rows, allowances, keywords, campaigns (the business side, above).  This
package imports only ``mailer.core`` and third-party libraries.
"""
