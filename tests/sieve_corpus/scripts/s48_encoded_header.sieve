require ["fileinto", "variables"];
if header :contains "from" "André" { fileinto "Andre"; }
if header :matches "subject" "Réunion *" { fileinto "Meeting-${1}"; }
if address :is "from" "andre+news@example.fr" { fileinto "AndreAddr"; }
