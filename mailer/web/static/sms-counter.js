/* SMS segment counting (GSM 03.38 7-bit / UCS-2): the twin of analyse() in
   mailer/sms/encoding.py, for the composer's live counter.

   The tables are not written here: the page hands them over as JSON made from the Python
   module (web/sms.py, counter_tables()), so the two cannot drift; a test runs this file
   and the Python function over the same texts.  Rules, as in Python:
   - GSM-7 when every character is in the basic or the extension table; an extension
     character costs two septets; 160 in one part, 153 per part when concatenated;
   - UCS-2 otherwise, in UTF-16 units (a character outside the BMP costs two); 70 / 67;
   - a part never ends inside an escape pair or a surrogate pair, so parts are packed,
     not divided.
   Works in the browser (window.SmsCounter) and in Node (module.exports). */
(function (root, factory) {
  'use strict';
  var api = factory();
  if (typeof module === 'object' && module.exports) {
    module.exports = api;
  } else {
    root.SmsCounter = api;
  }
}(this, function () {
  'use strict';

  /* {basic, extended, gsm7: [single, multi], ucs2: [single, multi]} -> lookup tables. */
  function tables(spec) {
    return {
      basic: new Set(Array.from(spec.basic)),
      extended: new Set(Array.from(spec.extended)),
      gsm7: spec.gsm7,
      ucs2: spec.ucs2
    };
  }

  /* Septets of one character, 0 when it is not GSM-7. */
  function gsmCost(t, ch) {
    if (t.basic.has(ch)) { return 1; }
    return t.extended.has(ch) ? 2 : 0;
  }

  function ucs2Cost(ch) {
    return ch.codePointAt(0) > 0xFFFF ? 2 : 1;
  }

  function forcesUcs2(t, ch) {
    return gsmCost(t, ch) === 0;
  }

  function sum(values, from) {
    var total = 0;
    for (var i = from || 0; i < values.length; i++) { total += values[i]; }
    return total;
  }

  /* Indexes where each part starts, filling parts greedily without splitting a character. */
  function pack(costs, budget) {
    var starts = [0];
    var used = 0;
    for (var i = 0; i < costs.length; i++) {
      if (used + costs[i] > budget) {
        starts.push(i);
        used = 0;
      }
      used += costs[i];
    }
    return starts;
  }

  /* Encoding, size and parts of text: the fields of Python's SegmentInfo. */
  function analyse(text, t) {
    var chars = Array.from(text);  // code points, as Python's str
    var gsm = chars.map(function (ch) { return gsmCost(t, ch); });
    var isGsm = gsm.every(function (cost) { return cost > 0; });
    var costs = isGsm ? gsm : chars.map(ucs2Cost);
    var budget = isGsm ? t.gsm7 : t.ucs2;
    var units = sum(costs);
    var forcing = [];
    if (!isGsm) {
      var seen = new Set();
      chars.forEach(function (ch, i) {
        if (gsm[i] === 0 && !seen.has(ch)) {
          seen.add(ch);
          forcing.push(ch);
        }
      });
      forcing.sort(function (a, b) { return a.codePointAt(0) - b.codePointAt(0); });
    }
    var info = {
      encoding: isGsm ? 'gsm7' : 'ucs2',
      characters: chars.length,
      units: units,
      ucs2_chars: forcing
    };
    if (units <= budget[0]) {
      info.parts = 1;
      info.per_part = budget[0];
      info.remaining = budget[0] - units;
      return info;
    }
    var starts = pack(costs, budget[1]);
    info.parts = starts.length;
    info.per_part = budget[1];
    info.remaining = budget[1] - sum(costs, starts[starts.length - 1]);
    return info;
  }

  return {tables: tables, analyse: analyse, forcesUcs2: forcesUcs2};
}));
