// Assistant text as Markdown: marked renders it, DOMPurify removes anything executable.
// The only place the console inserts HTML, and only after DOMPurify.
import { marked } from "/console/vendor/marked.esm.js";
import DOMPurify from "/console/vendor/purify.es.js";

marked.setOptions({ gfm: true, breaks: true });

// Links open in a new tab, without handing it this window.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function renderMarkdown(target, text) {
  const html = marked.parse(text || "", { async: false });
  target.innerHTML = DOMPurify.sanitize(html, {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "form", "input", "button", "img"],
    FORBID_ATTR: ["style"],
  });
}
