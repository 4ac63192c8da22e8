/* SMS pages of the portal: the composer's live counter (encoding, characters, parts, room
   left in the part, the characters that force UCS-2, the accent replacement and its saving,
   the cost) and the live figures of an SMS campaign while it sends.

   Counting is SmsCounter (sms-counter.js) with the tables the page carries as JSON; the
   normalisation and the estimate of a personalised text come from POST /sms/count, which
   runs the Python functions.  The texts shown are in the page (data-* attributes), so they
   are translated with the rest of it.  Without this script the pages still work: the
   counter shows the figures of the text as the server last saw it. */
(function () {
  'use strict';

  var ESTIMATE_DELAY_MS = 350;
  var POLL_MS = 2000;
  var MIRROR_LIMIT = 2000;  // characters of the text shown with the UCS-2 ones marked
  var PERSONALISED = /\{\{|\{%/;
  var LINK = /https?:\/\//i;
  var SEPARATORS = /[\n,;]+/;

  function byId(id) { return document.getElementById(id); }

  function format(template, values) {
    return String(template || '').replace(/\{(\w+)\}/g, function (whole, name) {
      return Object.prototype.hasOwnProperty.call(values, name) ? String(values[name]) : whole;
    });
  }

  /* An invisible character (no-break or zero-width space, tab...) is shown by its code. */
  function visible(ch) {
    if (/^[\s\u00ad\u200b-\u200d\u2028\u2029\ufeff]$/.test(ch)) {
      var hex = ch.codePointAt(0).toString(16).toUpperCase();
      return 'U+' + ('0000' + hex).slice(-Math.max(4, hex.length));
    }
    return ch;
  }

  function answer(response) {
    if (!response.ok) { throw new Error(String(response.status)); }
    return response.json();
  }

  function postForm(url, fields) {
    var body = new URLSearchParams();
    Object.keys(fields).forEach(function (name) { body.append(name, fields[name]); });
    return fetch(url, {
      method: 'POST',
      body: body,
      credentials: 'same-origin',
      cache: 'no-store',
      headers: {Accept: 'application/json'}
    }).then(answer);
  }

  function getJson(url) {
    return fetch(url, {credentials: 'same-origin', cache: 'no-store', headers: {Accept: 'application/json'}})
      .then(answer);
  }

  function setText(id, value) {
    var node = byId(id);
    if (node) { node.textContent = value; }
  }

  /* -- composer ------------------------------------------------------------------------- */

  function Composer(form) {
    this.form = form;
    this.box = byId('sms-counter');
    this.text = byId('sms-text');
    this.tables = window.SmsCounter.tables(JSON.parse(byId('sms-tables').textContent));
    this.csrf = form.querySelector('input[name=csrf_token]').value;
    this.labels = this.box.dataset;
    this.info = null;
    this.estimate = null;
    this.estimateFor = null;
    this.sequence = 0;
    this.timer = null;
    this.reach = {};
  }

  Composer.prototype.start = function () {
    var self = this;
    this.text.addEventListener('input', function () { self.update(); });
    var replace = byId('sms-replace');
    if (replace) { replace.addEventListener('click', function () { self.replace(); }); }
    Array.prototype.forEach.call(this.form.querySelectorAll('input[name=target]'), function (radio) {
      radio.addEventListener('change', function () { self.showTarget(); self.updateCost(); });
    });
    ['sms-list', 'sms-segment'].forEach(function (id) {
      var select = byId(id);
      if (select) { select.addEventListener('change', function () { self.updateCost(); }); }
    });
    var numbers = byId('sms-numbers');
    if (numbers) { numbers.addEventListener('input', function () { self.updateCost(); }); }
    this.form.addEventListener('submit', function () {
      // After the submit (a disabled button would not send its action): no double send.
      setTimeout(function () {
        Array.prototype.forEach.call(self.form.querySelectorAll('button[type=submit]'), function (b) {
          b.disabled = true;
        });
      }, 0);
    });
    this.showTarget();
    this.update();
  };

  Composer.prototype.target = function () {
    var checked = this.form.querySelector('input[name=target]:checked');
    return checked ? checked.value : null;
  };

  Composer.prototype.showTarget = function () {
    var target = this.target();
    if (!target) { return; }
    Array.prototype.forEach.call(this.form.querySelectorAll('[data-target-field]'), function (field) {
      field.hidden = field.getAttribute('data-target-field') !== target;
    });
    var draft = byId('action-draft');
    if (draft) { draft.hidden = target === 'numbers'; }
  };

  Composer.prototype.update = function () {
    var text = this.text.value;
    var info = window.SmsCounter.analyse(text, this.tables);
    this.info = info;
    this.box.setAttribute('data-encoding', info.encoding);
    setText('sms-encoding', info.encoding === 'gsm7' ? this.labels.gsm7 : this.labels.ucs2);
    setText('sms-characters', info.characters);
    setText('sms-parts', info.parts);
    setText('sms-remaining', info.remaining);
    setText('sms-per-part', info.per_part);
    this.showUcs2(text, info);
    var personalised = PERSONALISED.test(text);
    var links = LINK.test(text);
    byId('sms-personal').hidden = !personalised;
    byId('sms-links').hidden = !links;
    if (personalised || links) {
      this.askEstimate(text);
    } else {
      this.sequence += 1;  // an answer still on its way is stale
      this.estimate = null;
      byId('sms-estimate').hidden = true;
      byId('sms-template-error').hidden = true;
    }
    this.updateCost();
  };

  Composer.prototype.showUcs2 = function (text, info) {
    var panel = byId('sms-ucs2');
    if (info.encoding !== 'ucs2') {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    var list = byId('sms-ucs2-chars');
    list.textContent = '';
    info.ucs2_chars.forEach(function (ch) {
      var code = document.createElement('code');
      code.textContent = visible(ch);
      list.appendChild(code);
      list.appendChild(document.createTextNode(' '));
    });
    var mirror = byId('sms-highlight');
    mirror.textContent = '';
    var plain = '';
    var tables = this.tables;
    Array.from(text).slice(0, MIRROR_LIMIT).forEach(function (ch) {
      if (!window.SmsCounter.forcesUcs2(tables, ch)) {
        plain += ch;
        return;
      }
      if (plain) { mirror.appendChild(document.createTextNode(plain)); plain = ''; }
      var mark = document.createElement('mark');
      mark.textContent = visible(ch) === ch ? ch : '[' + visible(ch) + ']';
      mirror.appendChild(mark);
    });
    if (plain) { mirror.appendChild(document.createTextNode(plain)); }
  };

  /* The parts of one real recipient of a personalised text, or one with links (shortened
     when sent), and the template's error: asked of the server, a moment after typing. */
  Composer.prototype.askEstimate = function (text) {
    var self = this;
    var sequence = ++this.sequence;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () {
      postForm(self.box.getAttribute('data-count-url'), {text: text, csrf_token: self.csrf})
        .then(function (data) {
          if (sequence !== self.sequence) { return; }
          var error = byId('sms-template-error');
          var estimate = byId('sms-estimate');
          if (data.template_error) {
            self.estimate = null;
            error.textContent = data.template_error;
            error.hidden = false;
            estimate.hidden = true;
          } else {
            self.estimate = data.estimate_parts;
            error.hidden = true;
            estimate.textContent = format(self.labels.estimate, {parts: data.estimate_parts});
            estimate.hidden = false;
          }
          self.updateCost();
        })
        .catch(function () { /* the live count stands on its own */ });
    }, ESTIMATE_DELAY_MS);
  };

  Composer.prototype.replace = function () {
    var self = this;
    var button = byId('sms-replace');
    var note = byId('sms-saving');
    var text = this.text.value;
    button.disabled = true;
    postForm(this.box.getAttribute('data-count-url'), {text: text, csrf_token: this.csrf})
      .then(function (data) {
        if (self.text.value !== text) { return; }  // typed meanwhile: the user asks again
        self.text.value = data.normalised;
        self.update();
        var message = data.after.parts < data.parts
          ? format(self.labels.savingFewer, {before: data.parts, after: data.after.parts})
          : format(self.labels.savingSame, {parts: data.after.parts});
        if (data.replaced.length) {
          message = format(self.labels.replaced, {chars: data.replaced.map(visible).join(' ')}) + ' ' + message;
        }
        if (data.after.encoding === 'ucs2') {
          message += ' ' + format(self.labels.savingStill, {chars: data.after.ucs2_chars.map(visible).join(' ')});
        }
        note.textContent = message;
        note.classList.remove('error');
        note.hidden = false;
      })
      .catch(function () {
        note.textContent = self.labels.failed;
        note.classList.add('error');
        note.hidden = false;
      })
      .then(function () { button.disabled = false; });
  };

  /* Recipients of the chosen audience (numbers typed, or who in the list or segment can
     receive SMS), then done(count) or done(null) when unknown. */
  Composer.prototype.recipients = function (done) {
    var self = this;
    var target = this.target();
    if (target === 'numbers') {
      var box = byId('sms-numbers');
      done(box.value.split(SEPARATORS).filter(function (n) { return n.trim(); }).length);
      return;
    }
    var select = byId(target === 'segment' ? 'sms-segment' : 'sms-list');
    if (!select || !select.value) { done(null); return; }
    var key = target + ':' + select.value;
    if (Object.prototype.hasOwnProperty.call(this.reach, key)) { done(this.reach[key]); return; }
    var query = (target === 'segment' ? 'segment_id=' : 'list_id=') + encodeURIComponent(select.value);
    getJson(this.box.getAttribute('data-audience-url') + '?' + query)
      .then(function (data) {
        self.reach[key] = data.sendable;
        if (self.target() === target && select.value === key.split(':')[1]) { done(data.sendable); }
      })
      .catch(function () { done(null); });
  };

  Composer.prototype.updateCost = function () {
    var self = this;
    var parts = this.estimate || (this.info ? this.info.parts : 1);
    this.recipients(function (count) {
      var line = byId('sms-cost');
      var short = byId('sms-short');
      if (count === null) {
        line.textContent = self.labels.costUnknown;
        short.hidden = true;
        return;
      }
      var total = parts * count;
      line.textContent = format(self.labels.cost, {parts: parts, recipients: count, total: total});
      var available = self.box.getAttribute('data-available');
      if (available && total > Number(available)) {
        short.textContent = format(self.labels.short, {available: available, total: total});
        short.hidden = false;
      } else {
        short.hidden = true;
      }
    });
  };

  /* -- an SMS campaign's live figures --------------------------------------------------- */

  function followCampaign(section) {
    var url = section.getAttribute('data-poll');
    var state = section.getAttribute('data-state');
    function tick() {
      getJson(url)
        .then(function (data) {
          Object.keys(data.figures).forEach(function (name) {
            Array.prototype.forEach.call(document.querySelectorAll('[data-stat="' + name + '"]'), function (node) {
              node.textContent = data.figures[name];
            });
          });
          if (data.state !== state) {
            window.location.reload();  // new actions, dates and replies
          } else if (data.live) {
            setTimeout(tick, POLL_MS);
          }
        })
        .catch(function () { setTimeout(tick, 4 * POLL_MS); });
    }
    setTimeout(tick, POLL_MS);
  }

  function start() {
    var form = byId('sms-composer');
    if (form && window.SmsCounter) { new Composer(form).start(); }
    var live = document.querySelector('[data-poll][data-live="true"]');
    if (live) { followCampaign(live); }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
