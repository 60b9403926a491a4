require ["body", "fileinto"];
if body :raw :contains "--inner" { fileinto "Boundary"; }
if body :raw :contains "Content-Type: application/pdf" { fileinto "PartHeaders"; }
if body :content "multipart" :contains "MIME format" { fileinto "Preamble"; }
if body :text :contains "<b>" { fileinto "HtmlTags"; }
