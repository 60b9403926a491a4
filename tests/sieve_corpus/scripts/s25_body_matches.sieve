require ["body", "fileinto"];
if body :text :matches "*Code word: pineapple*" { fileinto "M"; }
if body :text :is "Here is patch 3 of 7.\r\n" { fileinto "Exact"; }
