require ["body", "fileinto"];
if body :text :contains "café" { fileinto "Latin1"; }
if body :text :contains "<p>" { fileinto "Tags"; }
if body :text :contains "color: red" { fileinto "Style"; }
if body :content "text/html" :contains "<p>" { fileinto "ContentTags"; }
if body :raw :contains "caf=E9" { fileinto "RawQP"; }
