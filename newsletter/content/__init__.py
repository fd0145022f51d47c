"""Content: item sources, the compiler (Jinja2 and premailer once an issue), message layout and slots."""
