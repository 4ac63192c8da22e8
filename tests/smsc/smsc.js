// A scripted SMSC for mailer's SMPP tests, on the npm `smpp` package (node-smpp) as the server.
//
// Started by tests/smsc.py:  node tests/smsc/smsc.js --port 0 [--config '{"...": ...}']
// It prints one JSON line {"event": "listening", "port": N} on stdout, then takes commands as
// JSON lines on stdin ({"id": 1, "cmd": "...", ...}) and answers each with one JSON line
// ({"id": 1, "ok": true, ...} or {"id": 1, "ok": false, "error": "..."}).
//
// What it does, per configuration (the `configure` command; defaults below):
// - bind_transceiver/transmitter/receiver: checks system_id and password (else ESME_RBINDFAIL);
// - submit_sm: records the PDU as received (addresses, esm_class, data_coding, UDH, payload)
//   and answers with a message id: hexadecimal, upper-case, zero-padded ("0000A1F3");
//   destinations in `reject` get that command_status instead; above `throttle_rate`
//   submit_sm per second it answers ESME_RTHROTTLED (0x58);
// - after `receipt_delay_ms`, a delivery receipt (deliver_sm, esm_class 0x04) per accepted
//   part: text "id:... sub:001 dlvrd:001 submit date:... done date:... stat:DELIVRD err:000
//   text:...", TLVs receipted_message_id and message_state (`receipt_tlvs`); destinations in
//   `undeliverable` get stat:UNDELIV, in `bad_bytes` a text with bytes that are not GSM-7;
//   `receipt_text_id: "decimal"` writes the id of the text in decimal;
// - a deliver_sm answered with an error status is sent again after `redeliver_ms` (up to
//   `redeliver_max` times); receipts for a system_id with no bound session wait for one;
// - on command: inbound messages (MO), concatenated with 8- or 16-bit UDH references, and
//   raw deliver_sm PDUs.
'use strict';

const smpp = require('smpp');

// Keep short_message and message_payload as raw bytes both ways, and times as the strings
// sent: the tests assert the exact bytes on the wire, and the gateway's own decoding is what
// is under test.
for (const command of ['submit_sm', 'deliver_sm', 'data_sm']) {
	const params = smpp.commands[command] && smpp.commands[command].params;
	for (const name of ['short_message', 'validity_period', 'schedule_delivery_time']) {
		if (params && params[name]) {
			delete params[name].filter;
		}
	}
}
delete smpp.tlvs.message_payload.filter;

const ESME_ROK = 0x00;
const ESME_RBINDFAIL = 0x0d;
const ESME_RTHROTTLED = 0x58;

const config = {
	system_id: 'mailer',
	password: 'secret',
	receipt_delay_ms: 50,
	receipts: true,
	receipt_tlvs: true,
	receipt_text_id: 'same', // or "decimal"
	undeliverable: [], // destination numbers that get stat:UNDELIV
	bad_bytes: [], // destination numbers whose receipt text has non-GSM bytes
	reject: {}, // destination number -> command_status of submit_sm_resp
	throttle_rate: 0, // submit_sm per second before ESME_RTHROTTLED; 0 = never
	redeliver_ms: 200,
	redeliver_max: 5,
	record: true, // keep every submit_sm for the `submitted` command
	first_id: 0xa1f0,
};

let nextId = 0;
let nextInboundRef = 1;
const submitted = []; // what submit_sm carried, in arrival order
const deliveries = []; // every deliver_sm sent and how it was answered
const pendingReceipts = []; // receipts waiting for a bound session of their system_id
const stats = {
	binds: 0,
	bind_failures: 0,
	submit_sm: 0,
	accepted: 0,
	throttled: 0,
	rejected: 0,
	receipts_sent: 0,
	receipts_acked: 0,
	deliver_errors: 0,
	enquire_links: 0,
	unbinds: 0,
};

// --- throttling: a one-second token bucket ---------------------------------------------------
let tokens = 0;
let tokensAt = Date.now();
function allowSubmit() {
	if (!config.throttle_rate) {
		return true;
	}
	const now = Date.now();
	tokens = Math.min(config.throttle_rate, tokens + ((now - tokensAt) / 1000) * config.throttle_rate);
	tokensAt = now;
	if (tokens >= 1) {
		tokens -= 1;
		return true;
	}
	return false;
}

// --- sessions ------------------------------------------------------------------------------
const sessions = new Set();

function boundSessionFor(systemId, preferred) {
	if (preferred && preferred.bound && preferred.canReceive && sessions.has(preferred)) {
		return preferred;
	}
	for (const session of sessions) {
		if (session.bound && session.canReceive && session.systemId === systemId) {
			return session;
		}
	}
	return null;
}

function smscTime(date) {
	const pad = (n) => String(n).padStart(2, '0');
	return (
		pad(date.getUTCFullYear() % 100) +
		pad(date.getUTCMonth() + 1) +
		pad(date.getUTCDate()) +
		pad(date.getUTCHours()) +
		pad(date.getUTCMinutes())
	);
}

function parseUdh(buffer) {
	const headers = [];
	if (!buffer.length) {
		return headers;
	}
	const length = buffer[0];
	let cursor = 1;
	while (cursor + 1 < length + 1) {
		const ie = buffer[cursor];
		const ieLength = buffer[cursor + 1];
		headers.push({ ie: ie, data: buffer.slice(cursor + 2, cursor + 2 + ieLength).toString('hex') });
		cursor += 2 + ieLength;
	}
	return headers;
}

function deliver(session, fields, attempt, onAnswer) {
	// Send one deliver_sm; resend it while the ESME answers with an error status.
	const pdu = new smpp.PDU('deliver_sm', fields);
	const record = {
		kind: fields.esm_class & 0x04 ? 'receipt' : 'mo',
		receipted_message_id: fields.receipted_message_id || null,
		attempt: attempt,
		status: null,
	};
	deliveries.push(record);
	const sent = session.send(pdu, (resp) => {
		record.status = resp.command_status;
		if (resp.command_status !== ESME_ROK) {
			stats.deliver_errors += 1;
			if (attempt < config.redeliver_max) {
				setTimeout(() => {
					const target = boundSessionFor(session.systemId, session);
					if (target) {
						deliver(target, fields, attempt + 1, onAnswer);
					} else {
						pendingReceipts.push({ systemId: session.systemId, fields: fields, onAnswer: onAnswer });
					}
				}, config.redeliver_ms);
				return;
			}
		}
		if (onAnswer) {
			onAnswer(resp.command_status);
		}
	});
	if (!sent) {
		record.status = 'not sent';
		pendingReceipts.push({ systemId: session.systemId, fields: fields, onAnswer: onAnswer });
	}
}

function sendOrQueue(systemId, preferred, fields, onAnswer) {
	const session = boundSessionFor(systemId, preferred);
	if (session) {
		deliver(session, fields, 1, onAnswer);
	} else {
		pendingReceipts.push({ systemId: systemId, fields: fields, onAnswer: onAnswer });
	}
}

function flushPending(session) {
	const waiting = pendingReceipts.splice(0, pendingReceipts.length);
	for (const item of waiting) {
		if (item.systemId === session.systemId) {
			deliver(session, item.fields, 1, item.onAnswer);
		} else {
			pendingReceipts.push(item);
		}
	}
}

function receiptFields(submit, messageId, submittedAt) {
	const destination = submit.destination_addr;
	let stat = 'DELIVRD';
	let state = 2; // DELIVERED
	let err = '000';
	if (config.undeliverable.includes(destination)) {
		stat = 'UNDELIV';
		state = 5; // UNDELIVERABLE
		err = '001';
	}
	const textId =
		config.receipt_text_id === 'decimal' ? BigInt('0x' + messageId).toString(10) : messageId;
	const now = new Date();
	let text = Buffer.from(
		'id:' + textId + ' sub:001 dlvrd:' + (state === 2 ? '001' : '000') +
		' submit date:' + smscTime(submittedAt) + ' done date:' + smscTime(now) +
		' stat:' + stat + ' err:' + err + ' text:',
		'latin1'
	);
	if (config.bad_bytes.includes(destination)) {
		text = Buffer.concat([text, Buffer.from([0x80, 0xff, 0xc3, 0x28, 0x9b, 0x41])]);
	} else {
		text = Buffer.concat([text, Buffer.from('Hola', 'latin1')]);
	}
	const fields = {
		source_addr_ton: submit.dest_addr_ton,
		source_addr_npi: submit.dest_addr_npi,
		source_addr: destination,
		dest_addr_ton: submit.source_addr_ton,
		dest_addr_npi: submit.source_addr_npi,
		destination_addr: submit.source_addr,
		esm_class: 0x04,
		data_coding: 0,
		short_message: text,
	};
	if (config.receipt_tlvs) {
		fields.receipted_message_id = messageId;
		fields.message_state = state;
	}
	return fields;
}

function onSubmit(session, pdu) {
	stats.submit_sm += 1;
	const destination = pdu.destination_addr;
	const raw = Buffer.isBuffer(pdu.short_message) ? pdu.short_message : Buffer.alloc(0);
	const udhi = (pdu.esm_class & 0x40) !== 0;
	const udhLength = udhi && raw.length ? raw[0] + 1 : 0;
	const record = {
		seq: pdu.sequence_number,
		system_id: session.systemId,
		source: pdu.source_addr,
		source_ton: pdu.source_addr_ton,
		source_npi: pdu.source_addr_npi,
		destination: destination,
		dest_ton: pdu.dest_addr_ton,
		dest_npi: pdu.dest_addr_npi,
		esm_class: pdu.esm_class,
		data_coding: pdu.data_coding,
		registered_delivery: pdu.registered_delivery,
		validity_period: pdu.validity_period || '',
		udh: raw.slice(0, udhLength).toString('hex'),
		udh_ies: parseUdh(raw.slice(0, udhLength)),
		payload: raw.slice(udhLength).toString('hex'),
		status: ESME_ROK,
		message_id: null,
	};
	if (!allowSubmit()) {
		stats.throttled += 1;
		record.status = ESME_RTHROTTLED;
	} else if (Object.prototype.hasOwnProperty.call(config.reject, destination)) {
		stats.rejected += 1;
		record.status = config.reject[destination];
	}
	if (config.record) {
		submitted.push(record);
	}
	if (record.status !== ESME_ROK) {
		session.send(pdu.response({ command_status: record.status }));
		return;
	}
	stats.accepted += 1;
	const messageId = (config.first_id + nextId++).toString(16).toUpperCase().padStart(8, '0');
	record.message_id = messageId;
	session.send(pdu.response({ message_id: messageId }));
	if (config.receipts && pdu.registered_delivery & 0x01) {
		const submittedAt = new Date();
		const fields = receiptFields(pdu, messageId, submittedAt);
		const systemId = session.systemId;
		setTimeout(() => {
			stats.receipts_sent += 1;
			sendOrQueue(systemId, session, fields, (status) => {
				if (status === ESME_ROK) {
					stats.receipts_acked += 1;
				}
			});
		}, config.receipt_delay_ms);
	}
}

function onBind(session, pdu, canSend, canReceive) {
	if (pdu.system_id !== config.system_id || pdu.password !== config.password) {
		stats.bind_failures += 1;
		session.send(pdu.response({ command_status: ESME_RBINDFAIL }));
		return;
	}
	stats.binds += 1;
	session.systemId = pdu.system_id;
	session.bound = true;
	session.canSend = canSend;
	session.canReceive = canReceive;
	session.send(pdu.response({ system_id: 'mailer-smsc' }), () => {
		if (canReceive) {
			flushPending(session);
		}
	});
}

const server = smpp.createServer((session) => {
	sessions.add(session);
	session.bound = false;
	session.on('bind_transceiver', (pdu) => onBind(session, pdu, true, true));
	session.on('bind_transmitter', (pdu) => onBind(session, pdu, true, false));
	session.on('bind_receiver', (pdu) => onBind(session, pdu, false, true));
	session.on('submit_sm', (pdu) => {
		if (!session.bound || !session.canSend) {
			session.send(pdu.response({ command_status: 0x04 })); // ESME_RINVBNDSTS
			return;
		}
		onSubmit(session, pdu);
	});
	session.on('enquire_link', (pdu) => {
		stats.enquire_links += 1;
		session.send(pdu.response());
	});
	session.on('unbind', (pdu) => {
		stats.unbinds += 1;
		session.bound = false;
		session.send(pdu.response(), () => session.close());
	});
	session.on('close', () => {
		session.bound = false;
		sessions.delete(session);
	});
	session.on('error', () => {
		session.bound = false;
		sessions.delete(session);
	});
});

// --- commands ------------------------------------------------------------------------------
function boundCount() {
	let count = 0;
	for (const session of sessions) {
		if (session.bound) {
			count += 1;
		}
	}
	return count;
}

function udhFor(bits, ref, total, seq) {
	if (bits === 16) {
		return Buffer.from([0x06, 0x08, 0x04, (ref >> 8) & 0xff, ref & 0xff, total, seq]);
	}
	return Buffer.from([0x05, 0x00, 0x03, ref & 0xff, total, seq]);
}

const commands = {
	configure(args) {
		for (const key of Object.keys(args)) {
			if (key !== 'id' && key !== 'cmd') {
				config[key] = args[key];
			}
		}
		return { config: config };
	},
	stats() {
		return {
			stats: stats,
			bound: boundCount(),
			pending_receipts: pendingReceipts.length,
			submitted: submitted.length,
		};
	},
	submitted(args) {
		const start = args.since || 0;
		return { submitted: submitted.slice(start) };
	},
	deliveries() {
		return { deliveries: deliveries };
	},
	clear() {
		submitted.length = 0;
		deliveries.length = 0;
		for (const key of Object.keys(stats)) {
			stats[key] = 0;
		}
		return {};
	},
	mo(args, reply) {
		// An inbound message: `parts` is a list of hex payloads (one deliver_sm each) with a
		// UDH of `ref_bits` (8 or 16) when there are several; or `text` (GSM-7 basic only,
		// as Latin-1 letters) for a single part.
		const systemId = args.system_id || config.system_id;
		const parts = args.parts_hex
			? args.parts_hex.map((hex) => Buffer.from(hex, 'hex'))
			: [Buffer.from(args.text || '', 'latin1')];
		const ref = args.ref !== undefined ? args.ref : nextInboundRef++;
		const order = args.order || parts.map((_, i) => i);
		const statuses = new Array(parts.length).fill(null);
		let answered = 0;
		for (const index of order) {
			let message = parts[index];
			let esmClass = 0x00;
			if (parts.length > 1) {
				message = Buffer.concat([udhFor(args.ref_bits || 8, ref, parts.length, index + 1), message]);
				esmClass = 0x40;
			}
			const fields = {
				source_addr_ton: args.source_ton !== undefined ? args.source_ton : 1,
				source_addr_npi: 1,
				source_addr: args.source,
				dest_addr_ton: args.dest_ton !== undefined ? args.dest_ton : 0,
				dest_addr_npi: 1,
				destination_addr: args.destination,
				esm_class: esmClass,
				data_coding: args.data_coding || 0,
				short_message: message,
			};
			sendOrQueue(systemId, null, fields, (status) => {
				statuses[index] = status;
				answered += 1;
				if (answered === order.length) {
					reply({ statuses: order.map((i) => statuses[i]) });
				}
			});
		}
		return undefined; // answered when every part is acknowledged
	},
	deliver_raw(args, reply) {
		// Any deliver_sm: short_message as hex, TLVs by node-smpp name.
		const fields = {
			source_addr_ton: args.source_ton || 1,
			source_addr_npi: 1,
			source_addr: args.source || '51987000000',
			dest_addr_ton: 0,
			dest_addr_npi: 1,
			destination_addr: args.destination || '',
			esm_class: args.esm_class || 0,
			data_coding: args.data_coding || 0,
			short_message: Buffer.from(args.short_message_hex || '', 'hex'),
		};
		for (const [name, value] of Object.entries(args.tlvs || {})) {
			fields[name] = value;
		}
		sendOrQueue(args.system_id || config.system_id, null, fields, (status) => {
			reply({ status: status });
		});
		return undefined;
	},
	kick() {
		// Drop every connection without unbind (a crash of the SMSC side).
		let count = 0;
		for (const session of sessions) {
			session.bound = false;
			session.destroy();
			count += 1;
		}
		return { closed: count };
	},
};

function answer(message) {
	process.stdout.write(JSON.stringify(message) + '\n');
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
	input += chunk;
	let newline;
	while ((newline = input.indexOf('\n')) >= 0) {
		const line = input.slice(0, newline).trim();
		input = input.slice(newline + 1);
		if (!line) {
			continue;
		}
		let request;
		try {
			request = JSON.parse(line);
		} catch (error) {
			answer({ id: null, ok: false, error: 'bad JSON: ' + error.message });
			continue;
		}
		const handler = commands[request.cmd];
		if (!handler) {
			answer({ id: request.id, ok: false, error: 'unknown command ' + request.cmd });
			continue;
		}
		try {
			const reply = (result) => answer(Object.assign({ id: request.id, ok: true }, result));
			const result = handler(request, reply);
			if (result !== undefined) {
				reply(result);
			}
		} catch (error) {
			answer({ id: request.id, ok: false, error: String(error && error.stack) });
		}
	}
});
process.stdin.on('end', () => process.exit(0));

// --- start ---------------------------------------------------------------------------------
const args = process.argv.slice(2);
let port = 0;
for (let i = 0; i < args.length; i++) {
	if (args[i] === '--port') {
		port = Number(args[++i]);
	} else if (args[i] === '--config') {
		Object.assign(config, JSON.parse(args[++i]));
	}
}
server.on('error', (error) => {
	answer({ event: 'error', error: String(error) });
	process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
	answer({ event: 'listening', port: server.address().port });
});
