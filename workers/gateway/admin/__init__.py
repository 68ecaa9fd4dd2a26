"""Static files of the gateway's admin page (served by workers.gateway.routes.ui): page.html
(the template), admin.js (vanilla JavaScript, no build step), admin.css."""
