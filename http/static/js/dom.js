// Building elements without HTML strings: text is always text (textContent), never markup.

/**
 * h("button", {type: "button", class: "x", onclick: fn}, "Label", child, ...)
 * Attributes starting with "on" become listeners; `dataset` an object of data-*;
 * children are nodes or strings (inserted as text nodes); null/false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "class") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, ...children);
  return el;
}

export function append(el, ...children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

let fieldCount = 0;

/** A labelled control: <label for=…>Text</label> <control id=…>. (Not a wrapping
 * label: a select inside one would add its chosen option to the control's name.) */
export function field(labelText, control) {
  if (!control.id) {
    fieldCount += 1;
    control.id = `field-${fieldCount}`;
  }
  return h("div", { class: "field" }, h("label", { for: control.id }, labelText), control);
}

export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** An error panel for a failed call: status, code and message, as text. */
export function errorBox(error) {
  const status = error && error.status ? `${error.status} ` : "";
  const code = error && error.code ? error.code : "error";
  const message = error && error.message ? error.message : String(error);
  return h("div", { class: "error", role: "alert" }, h("strong", {}, `${status}${code}`), ": ", message);
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
