require ["body", "fileinto"];
if body :content "text/html" :contains "<b>attached</b>" { fileinto "Html"; }
if body :content "application/pdf" :contains "secret" { fileinto "Pdf"; }
if body :content "text" :contains "bonjour" { fileinto "TextMain"; }
