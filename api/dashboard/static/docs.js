// The API docs page: Swagger UI from the vendored bundle, reading this server's OpenAPI schema.
// A file of its own, not an inline script, so the page works under the strict Content-Security-Policy.
window.addEventListener("DOMContentLoaded", () => {
  window.SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
