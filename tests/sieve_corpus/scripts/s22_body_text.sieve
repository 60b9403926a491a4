require ["body", "fileinto"];
if body :text :contains "pineapple" { fileinto "Fruit"; }
if body :contains "secret-attachment" { fileinto "DecodedAttachment"; }
if body :text :contains "—" { fileinto "QPDecoded"; }
