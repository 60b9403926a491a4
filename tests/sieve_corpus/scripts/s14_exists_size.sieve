require "fileinto";
if exists ["list-id", "precedence"] { fileinto "HasList"; }
if not exists "message-id" { fileinto "NoId"; }
if size :over 1K { fileinto "Big"; }
if size :under 300 { fileinto "Small"; }
