/* Audience pages of the portal: live progress of imports and cleanings, and the segment
   builder with its live count.  No framework: the pages work without it (a refresh, the
   rules as JSON), this only makes them live. */
(function () {
  'use strict';

  var POLL_MS = 500;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  /* -- progress: <progress data-poll="/imports/5/progress"> --------------------------- */

  function followProgress(bar) {
    var box = bar.parentNode;
    var url = bar.getAttribute('data-poll');
    function show(state) {
      bar.value = state.fraction;
      var percent = box.querySelector('[data-percent]');
      if (percent) { percent.textContent = Math.round(state.fraction * 100); }
      Object.keys(state.figures || {}).forEach(function (name) {
        var figure = box.querySelector('[data-figure="' + name + '"]');
        if (figure) { figure.textContent = state.figures[name]; }
      });
    }
    function tick() {
      fetch(url, {credentials: 'same-origin', headers: {Accept: 'application/json'}, cache: 'no-store'})
        .then(function (response) {
          if (!response.ok) { throw new Error(response.status); }
          return response.json();
        })
        .then(function (state) {
          show(state);
          if (state.finished) {
            bar.value = 1;
            setTimeout(function () { window.location.reload(); }, 300);  // the report
          } else {
            setTimeout(tick, POLL_MS);
          }
        })
        .catch(function () { setTimeout(tick, 4 * POLL_MS); });
    }
    setTimeout(tick, POLL_MS);
  }

  /* -- segment builder ---------------------------------------------------------------- */

  var GROUPS = [
    ['text', 'Datos del contacto'],
    ['status', 'Estados'],
    ['date', 'Fechas'],
    ['list', 'Listas e interacción'],
    ['engagement', 'Listas e interacción'],
    ['attr', 'Atributos']
  ];

  function Builder(root, schema) {
    this.root = root;
    this.schema = schema;
    this.form = root.closest('form');
    this.textarea = this.form.querySelector('textarea[name=rules]');
    this.rows = root.querySelector('.rule-rows');
    this.match = root.querySelector('select[data-match]');
    this.count = document.getElementById('segment-count');
    this.readonly = root.hasAttribute('data-readonly');
    this.fields = {};
    this.sequence = 0;
    this.timer = null;
    var self = this;
    schema.fields.forEach(function (field) { self.fields[field.value] = field; });
  }

  Builder.prototype.start = function () {
    var self = this;
    var rules = null;
    try { rules = JSON.parse(this.textarea.value || '{}'); } catch (e) { rules = null; }
    var flat = rules && typeof rules === 'object' && Array.isArray(rules.conditions || []) &&
      (rules.conditions || []).every(function (c) {
        return c && typeof c === 'object' && !('conditions' in c) && self.fields[c.field];
      });
    this.textarea.addEventListener('input', function () { self.scheduleCount(); });
    if (!flat) {  // nested groups or unknown fields: the JSON is the editor
      this.root.hidden = false;
      this.root.querySelector('[data-advanced]').hidden = false;
      this.match.disabled = true;
      var add = document.getElementById('add-condition');
      if (add) { add.hidden = true; }
      return;
    }
    this.root.hidden = false;
    this.textarea.closest('details').open = false;
    this.match.value = rules.match === 'any' ? 'any' : 'all';
    this.match.disabled = this.readonly;
    this.match.addEventListener('change', function () { self.changed(); });
    (rules.conditions || []).forEach(function (condition) { self.addRow(condition); });
    var add = document.getElementById('add-condition');
    if (add) {
      add.addEventListener('click', function () {
        var row = self.addRow({field: 'company', op: 'contains'});
        self.changed();
        row.querySelector('select').focus();
      });
    }
    this.refreshEmpty();
  };

  Builder.prototype.kind = function (field) {
    return (this.fields[field] || {}).kind || 'text';
  };

  Builder.prototype.fieldSelect = function (value) {
    var select = el('select', {'data-part': 'field'});
    var groups = {};
    var self = this;
    this.schema.fields.forEach(function (field) {
      var key = field.value.indexOf('attr:') === 0 ? 'attr' : field.kind;
      var label = (GROUPS.filter(function (g) { return g[0] === key; })[0] || ['', 'Otros'])[1];
      if (!groups[label]) {
        groups[label] = el('optgroup', {label: label});
        select.appendChild(groups[label]);
      }
      groups[label].appendChild(el('option', {value: field.value}, field.label));
    });
    select.value = self.fields[value] ? value : this.schema.fields[0].value;
    return select;
  };

  Builder.prototype.fillOps = function (row, op) {
    var select = row.querySelector('[data-part=op]');
    var ops = this.schema.ops[this.kind(row.querySelector('[data-part=field]').value)] || [];
    select.textContent = '';
    ops.forEach(function (pair) { select.appendChild(el('option', {value: pair[0]}, pair[1])); });
    var known = ops.some(function (pair) { return pair[0] === op; });
    select.value = known ? op : ops[0][0];
  };

  Builder.prototype.fillValue = function (row, value) {
    var box = row.querySelector('[data-part=value]');
    var field = row.querySelector('[data-part=field]').value;
    var op = row.querySelector('[data-part=op]').value;
    var kind = this.kind(field);
    var schema = this.schema;
    var input;
    box.textContent = '';
    if (schema.noValue.indexOf(op) >= 0) { return; }
    if (kind === 'list') {
      input = el('select');
      schema.lists.forEach(function (pair) { input.appendChild(el('option', {value: pair[0]}, pair[1])); });
      var first = Array.isArray(value) ? value[0] : value;
      if (first !== undefined && first !== null) { input.value = String(first); }
    } else if (kind === 'status') {
      input = el('select');
      if (op === 'in' || op === 'not_in') { input.multiple = true; input.size = 3; }
      var chosen = Array.isArray(value) ? value.map(String) : [String(value === undefined ? '' : value)];
      (schema.statuses[field] || []).forEach(function (pair) {
        var option = el('option', {value: pair[0]}, pair[1]);
        option.selected = chosen.indexOf(pair[0]) >= 0;
        input.appendChild(option);
      });
      if (!input.multiple && chosen[0] === '' && input.options.length) { input.selectedIndex = 0; }
    } else if (schema.dayOps.indexOf(op) >= 0 || kind === 'engagement') {
      input = el('input', {type: 'number', min: '0', step: '1', inputmode: 'numeric', placeholder: 'días'});
    } else if (kind === 'number') {
      input = el('input', {type: 'number', step: 'any', inputmode: 'decimal'});
    } else if (kind === 'date') {
      input = el('input', {type: 'date'});
    } else {
      input = el('input', {type: 'text', placeholder: op === 'in' ? 'valor 1, valor 2' : ''});
    }
    if (input.tagName === 'INPUT' && value !== undefined && value !== null) {
      input.value = Array.isArray(value) ? value.join(', ') : String(value);
    }
    input.setAttribute('data-input', '');
    input.setAttribute('aria-label', 'Valor');
    input.disabled = this.readonly;
    var self = this;
    input.addEventListener('input', function () { self.changed(); });
    input.addEventListener('change', function () { self.changed(); });
    box.appendChild(input);
  };

  Builder.prototype.addRow = function (condition) {
    var self = this;
    var row = el('li', {'class': 'rule-row'});
    var field = this.fieldSelect(condition.field);
    field.setAttribute('aria-label', 'Campo');
    var op = el('select', {'data-part': 'op', 'aria-label': 'Operador'});
    var value = el('span', {'data-part': 'value', 'class': 'rule-value'});
    row.appendChild(field);
    row.appendChild(op);
    row.appendChild(value);
    if (!this.readonly) {
      var remove = el('button', {type: 'button', 'class': 'small', 'aria-label': 'Quitar condición', title: 'Quitar condición'}, '✕');
      remove.addEventListener('click', function () {
        row.remove();
        self.refreshEmpty();
        self.changed();
      });
      row.appendChild(remove);
    }
    field.disabled = op.disabled = this.readonly;
    this.rows.appendChild(row);
    this.fillOps(row, condition.op);
    this.fillValue(row, condition.value);
    field.addEventListener('change', function () {
      self.fillOps(row, op.value);
      self.fillValue(row);
      self.changed();
    });
    op.addEventListener('change', function () {
      var current = self.readValue(row);
      self.fillValue(row, Array.isArray(current) ? current[0] : current);
      self.changed();
    });
    this.refreshEmpty();
    return row;
  };

  Builder.prototype.readValue = function (row) {
    var input = row.querySelector('[data-input]');
    if (!input) { return undefined; }
    var kind = this.kind(row.querySelector('[data-part=field]').value);
    if (input.multiple) {
      return Array.prototype.filter.call(input.options, function (o) { return o.selected; })
        .map(function (o) { return o.value; });
    }
    if (kind === 'list') { return input.value ? [parseInt(input.value, 10)] : []; }
    return input.value;
  };

  Builder.prototype.rules = function () {
    var self = this;
    var conditions = Array.prototype.map.call(this.rows.children, function (row) {
      var condition = {
        field: row.querySelector('[data-part=field]').value,
        op: row.querySelector('[data-part=op]').value
      };
      var value = self.readValue(row);
      if (value !== undefined) { condition.value = value; }
      return condition;
    });
    return {match: this.match.value, conditions: conditions};
  };

  Builder.prototype.refreshEmpty = function () {
    this.root.querySelector('[data-empty]').hidden = this.rows.children.length > 0;
  };

  Builder.prototype.changed = function () {
    this.textarea.value = JSON.stringify(this.rules(), null, 1);
    this.scheduleCount();
  };

  Builder.prototype.scheduleCount = function () {
    var self = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { self.fetchCount(); }, 250);
  };

  Builder.prototype.fetchCount = function () {
    var self = this;
    var sequence = ++this.sequence;
    var data = new FormData();
    data.append('csrf_token', this.form.querySelector('input[name=csrf_token]').value);
    data.append('rules', this.textarea.value);
    data.append('channel', 'email');
    this.count.classList.add('busy');
    fetch(this.root.getAttribute('data-count-url'), {method: 'POST', body: data, credentials: 'same-origin'})
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        if (sequence !== self.sequence) { return; }  // an older answer arriving late
        self.count.classList.remove('busy');
        Array.prototype.forEach.call(self.rows.children, function (row, index) {
          row.classList.toggle('invalid', answer.error !== undefined && answer.condition === index);
        });
        self.count.classList.toggle('error', answer.error !== undefined);
        self.count.textContent = answer.error !== undefined ? answer.error : answer.text;
      })
      .catch(function () {
        if (sequence === self.sequence) {
          self.count.classList.remove('busy');
          self.count.textContent = 'No se pudo contar: revise la conexión.';
        }
      });
  };

  document.addEventListener('DOMContentLoaded', function () {
    Array.prototype.forEach.call(document.querySelectorAll('progress[data-poll]'), followProgress);
    var root = document.getElementById('builder');
    var schema = document.getElementById('segment-schema');
    if (root && schema) { new Builder(root, JSON.parse(schema.textContent)).start(); }
  });
})();
